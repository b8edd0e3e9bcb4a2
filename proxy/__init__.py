"""aibridge-proxy: the program (CLI, settings, service, admin, local gateway, demo)."""
