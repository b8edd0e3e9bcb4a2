"""
Hooks dispatched from a table: for each hook, the handlers that implement it, in chain order.

mitmproxy's `AddonManager` walks every addon for every hook: it traverses each addon's
children, looks the hook up by name, enters a `safecall` context and awaits a coroutine,
whether the addon has the hook or not, and builds the hook's arguments again for each one.
After every flow hook it does all that once more for `update`, which no addon in our master
implements. With our twenty addons that bookkeeping was a fifth of a proxied request's CPU
(py-spy, the manual's Performance page). `HookTable` keeps mitmproxy's rules: addons are called
in order, a failing handler is logged as "Addon error" and the next one still runs, `AddonHalt`
ends the hook, `OptionsError` reaches whoever set the option, and sync-triggered hooks refuse
async handlers. It only looks each hook's handlers up once, again after any addon is added or
removed. Our master only (proxy/server/app.py): stock mitmdump keeps its own manager.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable

from mitmproxy import addonmanager
from mitmproxy import exceptions
from mitmproxy import flow
from mitmproxy import hooks
from mitmproxy import master


class HookTable(addonmanager.AddonManager):
    def __init__(self, engine: master.Master) -> None:
        super().__init__(engine)
        self._handlers: dict[str, tuple[Callable, ...]] = {}

    @classmethod
    def install(cls, engine: master.Master) -> None:
        """Before any addon is added: mitmproxy's manager is replaced, not wrapped."""
        if len(engine.addons):
            raise RuntimeError("HookTable must be installed before addons are added")
        engine.addons = cls(engine)

    # The table is rebuilt lazily after any change to the chain. `add` registers each addon
    # and appends it with no hook in between; `register` may configure (and so fill the table)
    # before the addon is in the chain, hence the clear once it is done.
    def register(self, addon):
        try:
            return super().register(addon)
        finally:
            self._handlers.clear()

    def remove(self, addon) -> None:
        super().remove(addon)
        self._handlers.clear()

    def handlers(self, name: str) -> tuple[Callable, ...]:
        """Every callable attribute of that name, in chain order, children after parents."""
        found = self._handlers.get(name)
        if found is None:
            found = self._handlers[name] = tuple(_lookup(self.chain, name))
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        await self._dispatch(event.name, event.args())

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        args = event.args()
        await self._dispatch(event.name, args)
        if isinstance(args[0], flow.Flow) and self.handlers("update"):
            await self._dispatch("update", hooks.UpdateHook([args[0]]).args())

    async def _dispatch(self, name: str, args: list) -> None:
        for func in self.handlers(name):
            try:
                result = func(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as e:
                if _ends_the_hook(e):
                    return

    def trigger(self, event: hooks.Hook) -> None:
        for func in self.handlers(event.name):
            if inspect.iscoroutinefunction(func):
                raise exceptions.AddonManagerError(
                    f"Async handler {event.name} ({func}) cannot be called from sync context"
                )
        for func in self.handlers(event.name):
            try:
                func(*event.args())
            except Exception as e:
                if _ends_the_hook(e):
                    return


def _ends_the_hook(e: Exception) -> bool:
    """mitmproxy's `safecall` rules for a handler's exception: AddonHalt ends the hook, an
    OptionsError goes to whoever set the option, anything else is logged and the next handler
    runs."""
    if isinstance(e, exceptions.AddonHalt):
        return True
    if isinstance(e, exceptions.OptionsError):
        raise e
    addonmanager.logger.error(f"Addon error: {e}", exc_info=e)
    return False


def _lookup(chain: list, name: str):
    for addon in addonmanager.traverse(chain):
        func = getattr(addon, name, None)
        if not func or isinstance(func, types.ModuleType):
            continue  # a module imported under a hook's name is no hook (mitmproxy agrees)
        if not callable(func):
            raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")
        yield func
