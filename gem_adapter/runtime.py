"""Several adapters on one loaded base, switched without reloading it.

``load_adapter`` adds a LoRA (GEM adapter or plain) to a loaded ``GEMModel`` after the
compatibility checks; ``use_adapter`` activates one adapter, or several at once (PEFT sums
their deltas; at most one of them may carry GEM rows); ``disable_adapters`` returns the
base's own outputs; ``using_adapter`` does a switch for one block only. Which adapter is
active also sets ``gem.config`` (template, pooling) to that adapter's ``gem_config``, and its
``adapter_scope`` (``scope``): a ``gem``-scoped adapter's deltas reach only the GEM tokens and
what follows them; adapters of different scopes are never active together.

``fuse_adapters`` folds the active adapters into the base weights, so inference runs at the
plain base's speed (unfused, each LoRA layer adds two small matmuls per call: encode ran at
0.85x and generate at 0.53x of the base in tools/bench.py on CPU). Every function that
changes which adapters are in use unfuses first, so switching stays exact.

The bookkeeping lives on the model object passed in (attribute ``_gem_adapters``), so these
functions work on any ``GEMModel``, including one loaded with ``adapter=``, whose adapter is
PEFT's ``default``. It sits below ``model.py``: an object with ``model``, ``config`` and
``tokenizer`` attributes is all it needs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import quiet, scope
from .compat import check_compatibility, spec_from_model
from .config import GEMConfig
from .errors import GEMError
from .files import read_adapter

_REGISTRY = "_gem_adapters"


@dataclass
class _Registry:
    configs: dict[str, GEMConfig | None] = field(default_factory=dict)  # None: plain LoRA
    base_config: GEMConfig | None = None
    disabled: bool = False


def _registry(gem) -> _Registry:
    registry = getattr(gem, _REGISTRY, None)
    if registry is None:
        loaded = list(getattr(gem.model, "peft_config", {}) or {})
        # A model loaded with adapter= carries that adapter's template; the bare base has none.
        base_config = dataclasses.replace(gem.config, template=None) if loaded else gem.config
        registry = _Registry({name: gem.config for name in loaded}, base_config)
        setattr(gem, _REGISTRY, registry)
    return registry


@contextmanager
def tolerant_token_wrappers() -> Iterator[None]:
    """Let PEFT load/save an adapter without token rows in a model that has a token-row adapter.

    peft 0.21's ``TrainableTokensWrapper.adapter_state_dict_load_map`` and
    ``adapter_state_dict`` expect every adapter to have the wrapper's rows, so loading a plain
    LoRA after a GEM adapter (or saving a combination without rows) fails with a KeyError;
    ``ModulesToSaveWrapper`` skips adapters it does not serve, and so does this patch, only
    while the block runs.
    """
    from peft.utils.other import TrainableTokensWrapper

    original_load_map = TrainableTokensWrapper.adapter_state_dict_load_map
    original_state_dict = TrainableTokensWrapper.adapter_state_dict

    def load_map(self, adapter_name):
        return original_load_map(self, adapter_name) if adapter_name in self._adapters else {}

    def state_dict(self, adapter_name, state_dict):
        return original_state_dict(self, adapter_name, state_dict) if adapter_name in self._adapters else {}

    TrainableTokensWrapper.adapter_state_dict_load_map = load_map
    TrainableTokensWrapper.adapter_state_dict = state_dict
    try:
        yield
    finally:
        TrainableTokensWrapper.adapter_state_dict_load_map = original_load_map
        TrainableTokensWrapper.adapter_state_dict = original_state_dict


def _is_peft(gem) -> bool:
    return hasattr(gem.model, "peft_config") and hasattr(gem.model, "base_model")


def causal_lm_of(model):
    """The transformers model inside a PEFT wrapper (the model itself when unwrapped)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def is_quantized(gem) -> bool:
    """Whether the loaded base holds quantised (bitsandbytes) weights."""
    lm = causal_lm_of(gem.model)
    return getattr(lm, "hf_quantizer", None) is not None or getattr(lm.config, "quantization_config", None) is not None


def _tuner_layers(gem) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in gem.model.modules() if isinstance(module, BaseTunerLayer)] if _is_peft(gem) else []


def is_fused(gem) -> bool:
    """Whether adapter deltas are folded into the base weights now."""
    return any(layer.merged for layer in _tuner_layers(gem))


def fuse_adapters(gem) -> bool:
    """Fold the active adapters (LoRA deltas and GEM rows) into the base weights; return whether fused.

    Outputs stay the same up to float rounding (embeddings within 2e-6 on SmolLM2-135M).
    Left unfused: a 4-bit base (folding a delta into NF4 weights re-quantises them and
    changes the outputs), and a LoRA on a matrix that two modules share (a tied ``lm_head``:
    its delta would leak into the input embedding), and the LoRA of an adapter of scope ``gem``
    (its delta applies to some tokens only; ``scope``), whose GEM rows alone are folded in.
    ``unfuse_adapters`` restores the separate weights.
    """
    if not active_adapters(gem) or is_quantized(gem):
        return False
    if scope.scope_of(gem.model) != "all":
        # The gated LoRA stays apart; the GEM rows are folded in (they only matter where GEM
        # tokens are, and unfolded, PEFT rebuilds the whole embedding matrix on every forward
        # pass to inject them: 2.7x the base's generation time on SmolLM2).
        from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

        for layer in _tuner_layers(gem):
            if isinstance(layer, TrainableTokensLayer) and not layer.merged:
                layer.merge()
        return False
    if _adapts_a_shared_matrix(gem):
        return False
    if not is_fused(gem):
        gem.model.merge_adapter()
    return True


def _adapts_a_shared_matrix(gem) -> bool:
    from collections import Counter

    from peft.tuners.lora import LoraLayer

    def pointers(module) -> Counter:
        return Counter(p.data_ptr() for _, p in module.named_parameters(remove_duplicate=False))

    everywhere = pointers(gem.model)
    for layer in _tuner_layers(gem):
        if isinstance(layer, LoraLayer):
            inside = pointers(layer.base_layer)  # may wrap another layer (trainable GEM rows)
            if any(everywhere[pointer] > count for pointer, count in inside.items()):
                return True
    return False


def unfuse_adapters(gem) -> None:
    """Take fused adapter deltas back out of the base weights (a no-op when not fused)."""
    if is_fused(gem):
        gem.model.unmerge_adapter()


def adapter_names(gem) -> list[str]:
    """Names of the adapters loaded into ``gem``."""
    return list(gem.model.peft_config) if _is_peft(gem) else []


def active_adapters(gem) -> list[str]:
    """Names of the adapters in use now ([] when none is loaded or they are disabled)."""
    if not _is_peft(gem) or _registry(gem).disabled:
        return []
    return list(gem.model.base_model.active_adapters)


def load_adapter(gem, path: str | os.PathLike, name: str = "default", *, allow_pickle: bool = False,
                 activate: bool = False) -> str:
    """Load the adapter folder ``path`` into ``gem`` under ``name``; return the name.

    The base stays loaded; which adapters are active does not change unless ``activate``.
    The adapter is checked against the loaded model first (architecture, modules,
    vocabulary, GEM tokens); nothing is changed when a check fails.
    """
    from peft import PeftModel

    folder = read_adapter(path, allow_pickle=allow_pickle)
    if name in adapter_names(gem):
        raise GEMError(f"an adapter named {name!r} is already loaded; pick another name or unload_adapter it first")
    check_compatibility(folder, spec_from_model(gem))
    registry = _registry(gem)
    before = active_adapters(gem)
    unfuse_adapters(gem)
    if _is_peft(gem):
        with tolerant_token_wrappers(), quiet.peft_calls():
            gem.model.load_adapter(str(folder.path), adapter_name=name, is_trainable=False)
    else:
        with quiet.peft_calls():
            gem.model = PeftModel.from_pretrained(gem.model, str(folder.path), adapter_name=name, is_trainable=False)
        before = []
    registry.configs[name] = folder.gem_config
    gem.model.eval()
    if activate:
        use_adapter(gem, name)
    elif before:
        use_adapter(gem, before)
    else:
        disable_adapters(gem)
    return name


def use_adapter(gem, name: str | Sequence[str] | None) -> None:
    """Activate adapter ``name`` (or several at once; None disables all of them)."""
    if name is None:
        disable_adapters(gem)
        return
    names = [name] if isinstance(name, str) else list(name)
    loaded = adapter_names(gem)
    unknown = [n for n in names if n not in loaded]
    if not names or unknown:
        raise GEMError(f"no adapter named {unknown or names} is loaded (loaded: {loaded}); load_adapter it first")
    registry = _registry(gem)
    with_rows = [n for n in names if gem.model.peft_config[n].trainable_token_indices]
    if len(with_rows) > 1:
        raise GEMError(
            f"adapters {with_rows} all carry GEM rows; only one GEM adapter can be active at a time - "
            "activate one GEM adapter together with plain LoRAs, or combine them with `gem stack`"
        )
    scopes = {n: (registry.configs.get(n) or GEMConfig()).adapter_scope for n in names}  # plain LoRA: all
    if len(set(scopes.values())) > 1:
        raise GEMError(f"adapters of different adapter_scope cannot be active together ({scopes}); activate them one at a time")
    unfuse_adapters(gem)
    tuner = gem.model.base_model
    tuner.set_adapter(names if len(names) > 1 else names[0], inference_mode=True)
    tuner.enable_adapter_layers()
    scope.install(gem.model, scopes[names[0]])
    gem_names = [n for n in names if registry.configs.get(n) is not None]
    gem.config = registry.configs[gem_names[0]] if gem_names else registry.base_config
    registry.disabled = False
    gem.model.eval()


def activate_adapters(gem, names: Sequence[str]) -> None:
    """Several adapters active together, without combining them (their deltas add up)."""
    use_adapter(gem, list(names))


def disable_adapters(gem) -> None:
    """Run the bare base (GEM rows as initialised) until ``use_adapter`` is called."""
    if not _is_peft(gem):
        return
    registry = _registry(gem)
    unfuse_adapters(gem)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's note on LoRA biases; ours have none to keep
        gem.model.base_model.disable_adapter_layers()
    scope.install(gem.model, "all")
    gem.config = registry.base_config
    registry.disabled = True


def unload_adapter(gem, name: str) -> None:
    """Remove adapter ``name`` from ``gem`` (the others stay loaded)."""
    if name not in adapter_names(gem):
        raise GEMError(f"no adapter named {name!r} is loaded (loaded: {adapter_names(gem)})")
    active = [n for n in active_adapters(gem) if n != name]
    unfuse_adapters(gem)
    registry = _registry(gem)
    if adapter_names(gem) == [name]:
        # PEFT cannot delete its last adapter (its active adapter would name a deleted one and
        # every later forward fails), so the wrapper goes: the bare base, GEM rows as loaded.
        gem.model = gem.model.unload()
        gem.model.eval()
        gem.config = registry.base_config
        delattr(gem, _REGISTRY)
        return
    gem.model.delete_adapter(name)
    registry.configs.pop(name, None)
    if active:
        use_adapter(gem, active)
    else:
        disable_adapters(gem)


@contextmanager
def using_adapter(gem, name: str | Sequence[str] | None) -> Iterator:
    """``with using_adapter(gem, "gem"): gem.encode(...)`` - switch for the block, then switch back."""
    previous = active_adapters(gem)
    use_adapter(gem, name)
    try:
        yield gem
    finally:
        use_adapter(gem, previous or None)


__all__ = [
    "activate_adapters",
    "active_adapters",
    "adapter_names",
    "disable_adapters",
    "fuse_adapters",
    "is_fused",
    "causal_lm_of",
    "is_quantized",
    "load_adapter",
    "unfuse_adapters",
    "unload_adapter",
    "use_adapter",
    "using_adapter",
]
