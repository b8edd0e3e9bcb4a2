module aibridgeproxy/tests/go

go 1.19
