"""Which keys a config's ``from_config`` reads: ``fvq quantize --option`` refuses one it would drop, and a checkpoint's
quantization section is refused for a key that is a misspelling of one it reads (:func:`misspelled_key_error`)."""

from __future__ import annotations

import difflib
import json
from typing import Any

from fastvideo_quant.errors import ConfigError
from fastvideo_quant.quantization.base import QuantizationConfig


class KeyTracker(dict):
    """A config dict that records which keys ``from_config`` asks for (present or not).

    A ``from_config`` that iterates or copies the whole dict is marked ``opaque``: which
    keys it uses cannot be told from the outside, so lookups after that are not recorded.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.asked: set[str] = set()
        self.opaque = False

    def _ask(self, key) -> None:
        if not self.opaque:  # once the whole dict is read (copied), a key looked up is no longer telling
            self.asked.add(key)

    def __getitem__(self, key):
        self._ask(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self._ask(key)
        return super().__contains__(key)

    def get(self, key, default=None):
        self._ask(key)
        return super().get(key, default)

    def pop(self, key, *default):
        self._ask(key)
        return super().pop(key, *default)

    def setdefault(self, key, default=None):
        self._ask(key)
        return super().setdefault(key, default)

    def _whole(self):
        self.opaque = True
        return self

    def __iter__(self):
        return super(KeyTracker, self._whole()).__iter__()

    def keys(self):
        return super(KeyTracker, self._whole()).keys()

    def items(self):
        return super(KeyTracker, self._whole()).items()

    def values(self):
        return super(KeyTracker, self._whole()).values()

    def copy(self):
        return dict(super(KeyTracker, self._whole()).items())


def keys_asked(cls: type[QuantizationConfig], config: dict[str, Any]) -> set[str]:
    """The keys ``cls.from_config(config)`` asks for, present or not (its keys and their defaults, for ``{}``).

    A ``from_config`` that raises (it needs a key) still counts the keys it asked for before failing.
    """
    tracker = KeyTracker(dict(config))
    try:
        cls.from_config(tracker)
    except Exception:  # noqa: BLE001 - a config that needs keys: the keys it asked for before failing still count
        pass
    return set(tracker.asked)


def unread_key_error(cls: type[QuantizationConfig], options: dict[str, Any], given: KeyTracker,
                     section: dict[str, Any] | None, *, where: str, accepted: set[str],
                     label: str = "option") -> ConfigError | None:
    """The ConfigError for the first key of ``options`` that ``cls.from_config(given)`` did not read, else None.

    ``given`` is the tracker ``from_config`` was called with (``options`` and any keys added to them),
    ``section`` its config's ``to_dict()`` (a ``from_config`` that copies its whole dict reads a key when
    ``to_dict()`` writes it back), ``accepted`` the keys it asks for otherwise (:func:`keys_asked`), ``where``
    the method as :func:`describe_method` says it, and ``label`` what the user calls a key (``option``,
    ``--config key``). ``quant_method`` is never refused here: a checkpoint's section names its method there,
    whether or not ``from_config`` reads it (``fvq quantize`` refuses it as an option before this check).
    """
    read = set(given.asked) | (set(section or {}) if given.opaque else set())
    known = sorted((set(accepted) | read) - {"quant_method"})  # (opaque: what to_dict() writes is what it reads)
    for key in options:
        if key in read or key == "quant_method":
            continue
        if key in known:
            why = (f"not with the other options given ({sorted(options)}): it is an alias of another key given, "
                   "or read only in another mode")
        else:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            why = "it is not a key this config reads"
            why += f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        return ConfigError(
            f"{label} {key}={json.dumps(options[key], default=repr)}: {cls.__name__}.from_config of {where} does not read "
            f"{key!r}, so it would be ignored; {why}. "
            + (f"Keys it reads: {', '.join(known)}" if known else "It reads no keys: it takes no options")
        )
    return None




#: Keys that hold a skip list (modules left unquantized) in some format, and whose: a checkpoint's section with one of
#: them that its method does not read is refused, as a misspelled key is (its modules would be built quantized).
SKIP_LIST_KEYS = {
    "modules_to_not_convert": "Hugging Face", "ignored_layers": "vLLM", "ignore": "compressed-tensors",
    "llm_int8_skip_modules": "bitsandbytes", "exclude_modules": "NVIDIA ModelOpt", "skip_modules": "HQQ / others",
}


def _skip_keys_read(known: list[str]) -> str:
    read = [k for k in known if k in SKIP_LIST_KEYS]
    return ", ".join(read) if read else "none: it has no skip list"


#: How close (difflib ratio, compared lowercase with '-' as '_') an unread checkpoint key must be to a read one to be
#: refused as its misspelling. Stricter than the suggestions' 0.6 (``--option`` refuses every unread key anyway): it
#: catches typos, plurals and British spellings (``treshold`` 0.97, ``group_sise`` 0.9, ``fvq_serialised`` 0.93) and
#: leaves keys of other conventions accepted (``num_bits`` against ``bits`` 0.67, ``format_version`` against
#: ``version`` 0.67, ``skip_modules`` against ``llm_int8_skip_modules`` 0.73).
MISSPELLING_CUTOFF = 0.8


def _misspelling_of(key: str, known: list[str]) -> bool:
    def norm(k: str) -> str:
        return k.lower().replace("-", "_")

    return bool(difflib.get_close_matches(norm(key), [norm(k) for k in known], n=1, cutoff=MISSPELLING_CUTOFF))


def misspelled_key_error(cls: type[QuantizationConfig], section: dict[str, Any], *, where: str,
                         source: str) -> ConfigError | None:
    """The ConfigError for the first key of a checkpoint's ``section`` that ``cls.from_config`` does not read and
    that is a close match of one it reads (``llm_int8_treshold``), else None: the value would be dropped silently.

    Other unread keys are accepted: real checkpoints carry keys of the tools that wrote them (AutoAWQ's
    ``modules_to_fuse``, transformers' ``bnb_4bit_*``), and so are the keys the config declares in
    :attr:`~QuantizationConfig.unread_checkpoint_keys`. ``source`` names the section (the file and its key).
    """
    accepted = keys_asked(cls, {})
    given = KeyTracker(dict(section))
    written, built = None, None
    try:
        built = cls.from_config(given)
        written = built.to_dict() if given.opaque else None
    except Exception:  # noqa: BLE001 - refused (perhaps because of the misspelling): the keys asked still tell
        pass  # (an error message listing the keys makes the tracker opaque; the keys asked before that count)
    read = set(given.asked) | set(written or {})
    known = sorted((set(accepted) | set(given.asked) | read) - {"quant_method"})
    for key in section:
        if key in read or key in known or key == "quant_method" or key in cls.unread_checkpoint_keys:
            continue
        # (only a section the config reads: one it refuses says why itself, before its skip list is reached)
        if key in SKIP_LIST_KEYS and section[key] and built is not None and not given.opaque:
            return ConfigError(
                f"{source}: key {key!r} holds a skip list ({section[key]!r}: {SKIP_LIST_KEYS[key]}'s key), which "
                f"{cls.__name__}.from_config of {where} does not read: the modules it names would be built quantized. "
                f"Move its entries to a key this config reads ({_skip_keys_read(known)}), or drop it if they are not "
                "meant to stay unquantized"
            )
        if _misspelling_of(key, known):
            error = unread_key_error(cls, {key: section[key]}, given, written, where=where, accepted=accepted,
                                     label=f"{source}: key")
            return ConfigError(
                f"{error}. Correct the key in the checkpoint's config (unread keys that are not close to one it reads "
                "are accepted; a plugin whose format carries this key declares it in unread_checkpoint_keys)"
            )
    return None
