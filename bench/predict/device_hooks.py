"""accelerate's device hooks, done on the meta trace of a split generation (``split``).

On the GPUs, ``dispatch_model`` puts an ``AlignDevicesHook`` on every module of the
device map (``accelerate/hooks.py``): the module runs on its card, and each tensor
argument is sent there (``send_to_device``: a copy when it lives on another card); the
root's hook (``io_same_device``) brings the output back to the input's card; keys in
``_skip_keys_device_placement`` (the cache) are never moved. An offloaded module
(``"cpu"``) executes on the main card, each of its leaf modules' weights copied there for
its own forward (``attach_align_device_hook(offload=True)``). ``Devices`` does the same on
the meta model so that every traced allocation is on one card.
"""

from __future__ import annotations

from bench.predict import trace as tr


class Devices:
    """What accelerate's hooks do on the GPUs, done on the meta trace (module docstring)."""

    MAIN = 0

    def __init__(self, placed: dict[str, int | str], param_bytes) -> None:
        self.placed = placed
        self.param_bytes = param_bytes
        self.copies: list[tuple[int, int]] = []
        """(forward index, bytes) of every copy between devices."""

    def attach(self, model, log) -> list:
        import torch

        self.log = log
        self.changes: list[tuple[int, int]] = [(0, self.MAIN)]
        self.card_of: dict[int, int] = {}
        self._seen = 0
        stack = [self.MAIN]
        forward = [-1]
        modules = dict(model.named_modules())

        def mark(card: int) -> None:
            self.changes.append((len(log.trace.events), card))

        def locate() -> None:  # the card of every storage allocated since the last look
            events = log.trace.events
            for i in range(self._seen, len(events)):
                if events[i][0] == tr.ALLOC:
                    self.card_of[events[i][1]] = self._card_at(i)
            self._seen = len(events)

        def moved(value, card: int):
            if isinstance(value, torch.Tensor):
                key = getattr(value.untyped_storage(), "_bench_key", None)
                if key and self.card_of.get(key, self.MAIN) != card:
                    copy = torch.empty_like(value)
                    self.copies.append((forward[0], copy.untyped_storage().nbytes()))
                    return copy
                return value
            if isinstance(value, tuple):
                return tuple(moved(v, card) for v in value)
            if isinstance(value, list):
                return [moved(v, card) for v in value]
            return value

        def enter(card: int):
            def hook(module, args, kwargs):
                locate()
                stack.append(card)
                mark(card)
                args = tuple(moved(a, card) for a in args)
                kwargs = {
                    k: (v if k in ("past_key_values", "cache", "layer_past") else moved(v, card))
                    for k, v in kwargs.items()
                }
                return args, kwargs

            return hook

        def leave(module, args, kwargs, output):
            stack.pop()
            mark(stack[-1])

        hooks = []
        for name, where in self.placed.items():
            card = where if isinstance(where, int) else self.MAIN
            module = modules[name]
            hooks.append(module.register_forward_pre_hook(enter(card), with_kwargs=True))
            hooks.append(module.register_forward_hook(leave, with_kwargs=True))
            if not isinstance(where, int):  # offloaded: each leaf's weights on card 0 for its forward
                for sub in module.modules():
                    own = [p for p in sub.parameters(recurse=False)]
                    if own:
                        hooks += self._stream(sub, sum(self.param_bytes(p) for p in own))

        def root_enter(module, args, kwargs):
            forward[0] += 1

        def root_leave(module, args, kwargs, output):
            locate()
            logits = getattr(output, "logits", None)
            if logits is not None:
                output["logits"] = moved(logits, self.MAIN)
            return output

        hooks.append(model.register_forward_pre_hook(root_enter, with_kwargs=True))
        hooks.append(model.register_forward_hook(root_leave, with_kwargs=True))
        return hooks

    def _stream(self, module, nbytes: int) -> list:
        import torch

        held: dict[int, object] = {}

        def load(mod, args):
            phase, self.log.phase = self.log.phase, "offloaded"
            held[id(mod)] = torch.empty((nbytes,), dtype=torch.uint8, device="meta")
            self.log.phase = phase

        def drop(mod, args, output):
            held.pop(id(mod), None)

        return [module.register_forward_pre_hook(load), module.register_forward_hook(drop)]

    def _card_at(self, index: int) -> int:
        card = self.MAIN
        for at, c in self.changes:
            if at > index:
                break
            card = c
        return card

    def finish(self, t: dict) -> None:
        """Tag every event ``phase@card``: an allocation with the card it was made on, a free with its allocation's."""
        events = t["events"]
        cards: dict[int, int] = {}
        out = []
        j, card = 0, self.MAIN
        for i, (kind, key, n, tag) in enumerate(events):
            while j < len(self.changes) and self.changes[j][0] <= i:
                card = self.changes[j][1]
                j += 1
            if kind == tr.ALLOC:
                cards[key] = card
            out.append((kind, key, n, f"{tag}@{cards.get(key, self.MAIN)}"))
        t["events"] = out


def owner(name: str, placed: dict[str, int | str]) -> int | str:
    """The device of the module holding parameter ``name`` (the longest matching prefix)."""
    best = -1
    where: int | str = Devices.MAIN
    for module, device in placed.items():
        if (name == module or name.startswith(module + ".") or module == "") and len(module) > best:
            best, where = len(module), device
    return where
