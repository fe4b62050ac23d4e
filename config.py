"""Configuration for train.py and eval.py: mindcv's arguments, groups and defaults, from YAML and the command line.

The YAML file (``-c/--config``) gives defaults and the command line wins. Compared with mindcv 0.3.0:

- an unknown YAML key is an error that names the key and the closest valid one;
- YAML values are type-checked and their ``choices`` enforced, like command-line values;
- lists parse from the command line (``--scale 0.08,1.0`` or ``--scale "[0.08, 1.0]"``) and booleans
  mean what they say (``--ema False`` is False);
- ``device_target`` defaults to ``auto`` (the backend of the installed MindSpore), so a CPU-only
  machine works out of the box;
- the model keys ``img_size``, ``mlp_layer``, ``nblocks`` and ``model_kwargs`` (any other entrypoint
  argument, e.g. ``{patch_size: 4, num_blocks: 4}``) are added, and the keys a model family declares for itself
  (``CONFIG_OPTIONS`` of its module in ``mindcv_ext/models``: T2T-ViT's attention settings, say);
- ``image_resize``, ``crop_pct``, ``interpolation``, ``mean`` and ``std`` default to the model's own
  ``default_cfg`` instead of fixed ImageNet values;
- configuration input is bounded: the file's size, and every structured value's nesting depth and size counted
  with YAML aliases expanded (``load_yaml``, ``check_value``), so an alias "bomb" is an error naming its key
  instead of unbounded memory in whatever walks the value later.
"""
import argparse
import ast
import difflib
import functools
import importlib.util
import json
import os
import re
import reprlib
import sys
from typing import Any, Dict, List, Optional, Tuple

import yaml

__all__ = ["create_parser", "parse_args", "save_args", "model_arguments", "model_options", "input_resolution",
           "mapping_value", "ConfigError",
           "load_yaml", "check_value", "MAX_CONFIG_BYTES", "MAX_DEPTH", "MAX_VALUES", "MAX_TEXT_CHARS",
           "MAX_SCALAR_CHARS"]

# Options that only one model family takes live with the family: a literal table of this name in its module under
# mindcv_ext/models (``family_options``). They are passed to the entrypoint only when set.
FAMILY_OPTIONS_TABLE = "CONFIG_OPTIONS"

DATASETS = ("imagenet", "folder", "digits", "cifar10", "cifar100", "fashion_mnist", "mnist")


# Keys of older mindcv versions and of the ports our users come from: (current key, value conversion).
RENAMED_KEYS = {
    "dataset_path": ("data_dir", None),
    "filter_bias_and_bn": ("weight_decay_filter", lambda value: "norm_and_bias" if str2bool(value) else "disable"),
}
# Arguments OpenI's older task convention appends to the start file's command line.
PLATFORM_ARGUMENTS = ("multi_data_url", "data_url", "train_url", "ckpt_url", "pretrain_url", "model_url")
# Names from other frameworks that spelling similarity would not find.
COMMON_NAMES = {"learning_rate": "lr", "base_lr": "lr", "epochs": "epoch_size", "num_epochs": "epoch_size",
                "optimizer": "opt", "data_path": "data_dir", "output_dir": "ckpt_save_dir",
                "save_dir": "ckpt_save_dir", "arch": "model", "workers": "num_parallel_workers"}


class ConfigError(ValueError):
    """A configuration value or file is wrong; the message names it."""


# Bounds on configuration input. A configuration is a few KB holding a few hundred values, none nested more than
# three levels (model_kwargs: {key: [numbers]}); the bounds are far above that and far below what hurts. The
# values count YAML aliases expanded: PyYAML shares an aliased node, so loading 25 levels of ten aliases each is
# cheap, but whatever later walks, copies or prints the value (a type check, an error message, save_args) meets
# 10**25 numbers. Each bound is checked without expanding anything.
MAX_CONFIG_BYTES = 1 << 20  # a configuration file, or the text of one YAML value
MAX_DEPTH = 20  # levels of lists and mappings in one value (a key of the file, or a command-line value)
MAX_VALUES = 100_000  # scalars, lists and mappings in a file or value, counted with aliases expanded
MAX_TEXT_CHARS = 10_000  # a list or mapping written as text: on the command line, or quoted in the YAML
MAX_SCALAR_CHARS = 4_096  # one YAML scalar: a path is at most 4,096 bytes (PATH_MAX)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 4, 200, 200, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 12


def _short(value: Any) -> str:
    """repr() for an error message: a user's value is cut short, never expanded in full (nor a shared or
    self-containing structure walked)."""
    return _REPR.repr(value)


def _clip(text: str, limit: int = 200) -> str:
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class _Unbounded(Exception):
    """A value beyond the bounds: ``problem`` completes "key 'mean' ..." (``where``, when known, names the key)."""

    def __init__(self, problem: str, where: Optional[str] = None):
        super().__init__(problem)
        self.problem, self.where = problem, where


def _yaml_children(node) -> Optional[list]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return None


def _object_children(value) -> Optional[list]:
    if isinstance(value, dict):
        return [part for pair in value.items() for part in pair]
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return None


class _Extent:
    """Levels and expanded size of values whose lists and mappings may be shared (YAML aliases) or contain
    themselves, measured without expanding them: each container is visited once, its figures remembered, and the
    walk stops as soon as a bound is passed (so it never recurses more than ``MAX_DEPTH`` + 1 frames deep)."""

    def __init__(self, children, via: str):
        self.children, self.via = children, via  # via: " through YAML aliases" when the text has any
        self.done = {}  # id(container) -> (levels, size)
        self.open = set()  # containers being measured: meeting one again means it contains itself

    def measure(self, node, depth: int = 0) -> Tuple[int, int]:
        """(levels, size) of ``node``, at ``depth`` containers below the value being checked."""
        kids = self.children(node)
        if kids is None:
            return 0, 1
        key = id(node)
        if key in self.open:
            raise _Unbounded(f"contains itself{' through a YAML alias' if self.via else ''}; a configuration "
                             f"value is a finite list or mapping")
        done = self.done.get(key)
        if done is None:
            if depth >= MAX_DEPTH:
                raise self._too_deep()
            self.open.add(key)
            levels, size = 1, 1
            for kid in kids:
                kid_levels, kid_size = self.measure(kid, depth + 1)
                levels, size = max(levels, kid_levels + 1), size + kid_size
                if size > MAX_VALUES:
                    raise _Unbounded(f"expands to more than {MAX_VALUES:,} values{self.via}; a configuration "
                                     f"value is a few numbers or a small mapping")
            self.open.discard(key)
            done = self.done[key] = (levels, size)
        if depth + done[0] > MAX_DEPTH:
            raise self._too_deep()
        return done

    def _too_deep(self) -> _Unbounded:
        return _Unbounded(f"nests deeper than {MAX_DEPTH} levels{self.via}; a configuration value is a number, a "
                          f"list or a small mapping")

    def check(self, root, pairs: Optional[list], whole: str) -> None:
        """Bound ``root``; ``pairs`` ([(name, key, value)]) when it is a mapping, to name the key at fault."""
        if pairs is None:
            try:
                self.measure(root)
            except _Unbounded as exc:
                raise _Unbounded(exc.problem, exc.where or whole) from None
            return
        total = 1
        for name, key, value in pairs:
            try:
                total += self.measure(key)[1] + self.measure(value)[1]
            except _Unbounded as exc:
                raise _Unbounded(exc.problem, f"key {name}") from None
            if total > MAX_VALUES:
                raise _Unbounded(f"brings {whole} past {MAX_VALUES:,} values{self.via}; a configuration is a few "
                                 f"hundred", f"key {name}")


def _key_name(key) -> str:
    if isinstance(key, yaml.ScalarNode):
        return f"'{_clip(key.value, 100)}'"
    if isinstance(key, yaml.Node):
        return "(a list or mapping as key)"
    return _short(key) if not isinstance(key, str) else f"'{_clip(key, 100)}'"


def check_value(value: Any, what: str = "the value") -> Any:
    """``value`` if its lists and mappings nest at most ``MAX_DEPTH`` levels and hold at most ``MAX_VALUES``
    values (shared ones counted each time they appear), else a ``ConfigError`` naming the key of a mapping at
    fault (or ``what``). Use it on any structured value read from the command line (json.loads, literal_eval)."""
    if _object_children(value) is None:
        return value
    pairs = [(_key_name(k), k, v) for k, v in value.items()] if isinstance(value, dict) else None
    try:
        _Extent(_object_children, "").check(value, pairs, what)
    except _Unbounded as exc:
        raise ConfigError(f"{exc.where} {exc.problem}") from None
    return value


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that composes at most ``MAX_VALUES`` nodes nested at most ``MAX_DEPTH`` levels below a
    top-level key (PyYAML composes recursively), and notes whether the text uses aliases."""

    def __init__(self, stream):
        super().__init__(stream)
        self.bound_level, self.bound_count, self.bound_key, self.bound_aliases = 0, 0, None, False

    def compose_node(self, parent, index):
        if self.bound_level == 1 and isinstance(parent, yaml.MappingNode):
            self.bound_key = index  # the key's node while its value is composed; None while a key is
        self.bound_count += 1
        if self.check_event(yaml.AliasEvent):
            self.bound_aliases = True
        elif self.bound_level > MAX_DEPTH and self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            raise _Unbounded(f"nests deeper than {MAX_DEPTH} levels; a configuration value is a number, a list "
                             f"or a small mapping", self._where())
        elif self.check_event(yaml.ScalarEvent) and len(self.peek_event().value) > MAX_SCALAR_CHARS:
            # PyYAML builds a base-60 integer ("1:1:1:...") in quadratic time, and Python refuses ints of over
            # 4,300 digits: a scalar's length is bounded before anything is constructed.
            raise _Unbounded(f"holds a value of {len(self.peek_event().value):,} characters (at most "
                             f"{MAX_SCALAR_CHARS:,}); a configuration value is a number, a name or a path",
                             self._where())
        if self.bound_count > MAX_VALUES:
            raise _Unbounded(f"holds more than {MAX_VALUES:,} values; a configuration is a few hundred",
                             self._where())
        self.bound_level += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.bound_level -= 1

    def _where(self) -> Optional[str]:
        return f"key {_key_name(self.bound_key)}" if self.bound_key is not None else None


def load_yaml(text_or_stream, source: str = "") -> Any:
    """``yaml.safe_load`` with bounds: at most ``MAX_CONFIG_BYTES`` of text, and each top-level key's value at
    most ``MAX_DEPTH`` levels deep and ``MAX_VALUES`` values with YAML aliases expanded (a value that contains
    itself is refused too). The node graph is checked before anything is constructed, in time and memory of the
    order of the text's length.

    ``source`` (e.g. the file's path) starts the messages. A value beyond the bounds, text that is too long or not
    UTF-8 raise ``ConfigError`` naming the key; invalid YAML raises ``yaml.YAMLError`` as ``yaml.safe_load`` does.
    """
    prefix, whole = (f"{source}: ", "the file") if source else ("", "the value")
    if isinstance(text_or_stream, (str, bytes)):
        text = text_or_stream
    else:
        try:
            text = text_or_stream.read(MAX_CONFIG_BYTES + 1)
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{prefix}not UTF-8 text (byte {exc.start}: {exc.reason}); a configuration is "
                              f"YAML text") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{prefix}more than {MAX_CONFIG_BYTES // (1 << 20)} MiB of text; a configuration is a "
                          f"few KB")
    loader = _BoundedLoader(text)
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            via = " through YAML aliases" if loader.bound_aliases else ""
            pairs = [(_key_name(k), k, v) for k, v in node.value] if isinstance(node, yaml.MappingNode) else None
            _Extent(_yaml_children, via).check(node, pairs, whole)
        except _Unbounded as exc:
            raise ConfigError(f"{prefix}{exc.where or whole} {exc.problem}") from None
        try:
            return loader.construct_document(node)
        except (ValueError, OverflowError) as exc:  # a value PyYAML reads but Python cannot build
            raise ConfigError(f"{prefix}{whole} holds a value that cannot be read ({_clip(exc)})") from None
    finally:
        loader.dispose()


def _bounded(value: Any) -> Any:
    """check_value for a type converter: its error is argparse's (the message is prefixed with the option)."""
    try:
        return check_value(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bounded_text(text: str, what: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise argparse.ArgumentTypeError(f"{what} of {len(text):,} characters is too long (at most "
                                         f"{MAX_TEXT_CHARS:,}), starting {text[:40]!r}")
    return text


def str2bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "y", "1", "on"):
        return True
    if text in ("false", "no", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {_short(value)}")


def _none_or(convert):
    def parse(value):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        return convert(value)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _number_list(element):
    def parse(value) -> List:
        if isinstance(value, (list, tuple)):
            items = list(_bounded(value))
        else:
            text = _bounded_text(str(value).strip(), "a list")
            if text.startswith(("[", "(")):
                try:
                    items = list(_bounded(ast.literal_eval(text)))
                except (ValueError, SyntaxError, TypeError) as exc:
                    raise argparse.ArgumentTypeError(f"cannot read a list from {_short(value)}") from exc
                except (MemoryError, RecursionError) as exc:  # how Python's parser reports very deep nesting
                    raise argparse.ArgumentTypeError(f"cannot read a list from {_short(value)}: it nests too "
                                                     f"deeply") from exc
            else:
                items = [t for t in text.replace(",", " ").split() if t]
        try:
            if element is int and any(isinstance(i, float) and not i.is_integer() for i in items):
                raise ValueError("not whole numbers")
            return [element(item) for item in items]
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"expected a list of {element.__name__}s, got {_short(value)}") from exc

    parse.__name__ = f"{element.__name__}_list"
    return parse


# The sections mindcv's auto_augment parsers read, per policy ("randaug-m9-mstd0.5-inc1").
_AUGMENT_SECTIONS = {"randaug": {"m", "n", "w", "mstd", "mmax", "inc"}, "autoaug": {"mstd"}, "3a": {"mstd"},
                     "trivialaugwide": {"m"}, "augmix": {"m", "w", "d", "a"}}


def auto_augment_policy(value) -> Optional[str]:
    """An auto_augment string that mindcv reads in full: its parser skips what it does not understand, so a
    YAML comment inside the quotes ("randaug-m9-inc1   # note") would be taken silently."""
    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return None
    text = str(value)
    policy, *sections = text.split("-")
    if policy not in _AUGMENT_SECTIONS:
        raise argparse.ArgumentTypeError(f"auto_augment {_short(text)}: unknown policy {_short(policy)}; use one of "
                                         f"{', '.join(sorted(_AUGMENT_SECTIONS))}, e.g. randaug-m9-mstd0.5-inc1")
    for section in sections:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d+)?)", section)
        if not match or match.group(1) not in _AUGMENT_SECTIONS[policy]:
            raise argparse.ArgumentTypeError(
                f"auto_augment {_short(text)}: section {_short(section)} is not one of {policy}'s "
                f"({', '.join(sorted(_AUGMENT_SECTIONS[policy]))}, each followed by a number); a YAML comment "
                f"belongs after the closing quote")
    return text


def mapping_value(value) -> Dict[str, Any]:
    """A mapping option's value (``--model_kwargs``), YAML or JSON, bounded as a config file's values are."""
    if isinstance(value, dict):
        return _bounded(value)
    if isinstance(value, (list, tuple)):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{patch_size: 4}}', got {_short(value)}")
    text = _bounded_text(str(value), "a mapping")
    try:
        parsed = load_yaml(text)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"cannot read a mapping from {_short(value)}: {exc}") from exc
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{patch_size: 4}}', got {_short(value)}")
    # YAML reads '{patch_size:4}' as the key 'patch_size:4' without a value, which would be dropped silently.
    unvalued = [str(key) for key, item in parsed.items() if item is None and ":" in str(key)]
    if unvalued:
        raise argparse.ArgumentTypeError(f"{_short(value)}: {', '.join(_short(k) for k in unvalued)} has no value; "
                                         f"put a space after each colon, e.g. '{{patch_size: 4}}'")
    return parsed


float_list = _number_list(float)
int_list = _number_list(int)
optional_int = _none_or(int)
optional_float = _none_or(float)
optional_str = _none_or(str)
optional_float_list = _none_or(float_list)
optional_int_list = _none_or(int_list)

# The "type" of a family option: every one is unset (None) by default, and passed to the entrypoint only when set.
FAMILY_OPTION_TYPES = {"str": optional_str, "int": optional_int, "float": optional_float,
                       "int_list": optional_int_list, "float_list": optional_float_list}
_FAMILY_OPTION_KEYS = {"name", "type", "help", "choices"}


def _family_table(path: str, source: str) -> Optional[tuple]:
    """The ``FAMILY_OPTIONS_TABLE`` assigned at the top level of a module's source, or None."""
    for node in ast.parse(source, path).body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == FAMILY_OPTIONS_TABLE for t in targets):
            try:
                return tuple(ast.literal_eval(node.value))
            except (ValueError, TypeError, SyntaxError) as exc:
                raise ValueError(f"{path}: {FAMILY_OPTIONS_TABLE} must be a literal table, as config.py reads it "
                                 f"without importing the module ({exc})") from None
    return None


@functools.lru_cache(maxsize=None)
def _package_folder(name: str) -> str:
    """The folder of the mindcv_ext subpackage ``name``, found without importing the package."""
    spec = importlib.util.find_spec("mindcv_ext")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("config.py cannot find the mindcv_ext package (run from the repository, or install it)")
    return os.path.join(list(spec.submodule_search_locations)[0], name)


@functools.lru_cache(maxsize=None)
def registered_layer_names() -> Tuple[str, ...]:
    """The names ``@register_linear`` gives in mindcv_ext/layers, in the order the package imports their modules
    (its registry's order), read from the sources: reading a configuration must not import MindSpore."""
    directory = _package_folder("layers")
    with open(os.path.join(directory, "__init__.py"), encoding="utf-8") as stream:
        modules = re.findall(r"^from \.(\w+) import", stream.read(), re.M)
    names: List[str] = []
    for module in dict.fromkeys(modules):
        path = os.path.join(directory, module + ".py")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as stream:
                names += re.findall(r"^@register_linear\(\"([^\"]+)\"\)", stream.read(), re.M)
    return tuple(dict.fromkeys(names))


def family_options() -> Tuple[Dict[str, Any], ...]:
    """The options that model families declare, each ``{name, type, help[, choices]}`` plus the ``module`` that
    declares it, in module order then table order (do not modify them: they are shared).

    Each table is read from its module's source, not imported: importing a model imports MindSpore, and reading a
    configuration must not. An option two families declare alike is listed once.
    """
    directory = _package_folder("models")
    options: Dict[str, Dict[str, Any]] = {}
    for file in sorted(os.listdir(directory)):
        if not file.endswith(".py"):
            continue
        path = os.path.join(directory, file)
        with open(path, encoding="utf-8") as stream:
            source = stream.read()
        table = _family_table(path, source) if FAMILY_OPTIONS_TABLE in source else None
        for entry in table or ():
            if not isinstance(entry, dict) or not {"name", "type", "help"} <= set(entry) <= _FAMILY_OPTION_KEYS \
                    or not str(entry["name"]).isidentifier() or entry["type"] not in FAMILY_OPTION_TYPES:
                raise ValueError(f"{path}: {FAMILY_OPTIONS_TABLE} entry {entry!r} must be a mapping of name (a "
                                 f"keyword), type (one of {', '.join(FAMILY_OPTION_TYPES)}), help and optionally "
                                 f"choices")
            option = dict(entry, module=f"mindcv_ext.models.{file[:-len('.py')]}")
            earlier = options.setdefault(option["name"], option)
            if earlier is not option and {**earlier, "module": None} != {**option, "module": None}:
                raise ValueError(f"the option {option['name']!r} is declared differently by {earlier['module']} and "
                                 f"{option['module']}")
    return tuple(options.values())


class _Parser(argparse.ArgumentParser):
    """Errors in one line that name the culprit, without the two-screen usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n(see {self.prog} --help for all options)\n")


def create_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        description="Training and evaluation configuration (mindcv conventions). Values come from the YAML given "
                    "with -c and are overridden by command-line options.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-c", "--config", type=str, default="", help="YAML configuration file")
    flag = dict(type=str2bool, nargs="?", const=True)

    group = parser.add_argument_group("System")
    group.add_argument("--mode", type=int, default=0, choices=[0, 1], help="0: graph mode, 1: PyNative mode")
    group.add_argument("--device_target", type=str, default="auto", choices=["auto", "CPU", "GPU", "Ascend"],
                       help="backend; 'auto' uses the one the installed MindSpore was built for")
    group.add_argument("--cpu_kernels", type=str, default="auto", choices=["auto", "on", "off"],
                       help="on the CPU backend, run the network on fused C++ kernels (mindcv_ext.accel; same "
                            "parameters and results, faster): auto where they can serve (float32, amp O0), on to "
                            "insist, off for the plain network that GPU and Ascend run. Exports are always plain")
    group.add_argument("--openi", type=str, default="auto", choices=["auto", "on", "off"],
                       help="OpenI task: data, pretrained weights and outputs through c2net (auto: when the "
                            "platform sets DATA_DOWNLOAD_METHOD)")
    group.add_argument("--openi_dataset", type=optional_str, default=None,
                       help="OpenI: the dataset to use when the task has several")
    # The platform's older convention passes the task's URLs as arguments; c2net gives the same paths, so they
    # are accepted and left unused rather than failing the task.
    for name in PLATFORM_ARGUMENTS:
        group.add_argument(f"--{name}", type=optional_str, default=None, help=argparse.SUPPRESS)
    group.add_argument("--distribute", default=False, **flag, help="data-parallel training (launch with msrun)")
    group.add_argument("--val_while_train", default=False, **flag, help="validate during training")
    group.add_argument("--val_interval", type=int, default=1, help="validate every this many epochs")
    group.add_argument("--log_interval", type=int, default=100, help="log every this many steps")
    group.add_argument("--seed", type=int, default=42, help="random seed")
    group.add_argument("--dry_run", default=False, **flag,
                       help="build the data pipeline, model, optimizer and schedule, report them, and stop")
    group.add_argument("--data_digest", default=False, **flag,
                       help="log which training samples each rank consumed (checks data-parallel sharding; "
                            "needs dataset_sink_mode False)")

    group = parser.add_argument_group("Dataset")
    group.add_argument("--dataset", type=str, default="imagenet", choices=DATASETS,
                       help="imagenet/folder: data_dir/<split>/<class>/<image>; digits: built-in; cifar10/100; "
                            "fashion_mnist/mnist: the four IDX files in data_dir (Fashion-MNIST unset: "
                            "/usr/share/datasets/fashion-mnist, from apt-get install dataset-fashion-mnist)")
    group.add_argument("--data_dir", "--dataset_path", type=str, default="./", help="dataset root")
    group.add_argument("--train_split", type=str, default="train", help="training sub-folder")
    group.add_argument("--val_split", type=str, default="val", help="validation sub-folder")
    group.add_argument("--cache_dir", type=optional_str, default=None,
                       help="where built-in datasets are written (default ~/.cache/mindcv_ext)")
    group.add_argument("--dataset_download", default=False, **flag,
                       help="accepted for mindcv compatibility; nothing is downloaded")
    group.add_argument("--check_images", default=True, **flag,
                       help="before epoch 1, check every image's header (image folders); False skips it")
    group.add_argument("--allow_empty_classes", default=False, **flag,
                       help="accept class folders without images (otherwise an error naming them)")
    group.add_argument("--allow_outside_links", default=False, **flag,
                       help="image folders: follow links (to images or class folders) that point outside data_dir "
                            "(otherwise an error naming them)")
    group.add_argument("--num_parallel_workers", type=int, default=8, help="data workers (capped at CPU count)")
    group.add_argument("--shuffle", default=True, **flag, help="shuffle the training data")
    group.add_argument("--num_samples", type=optional_int, default=None, help="use only this many samples")
    group.add_argument("--batch_size", type=int, default=128, help="batch size per device")
    group.add_argument("--drop_remainder", default=True, **flag, help="drop the last incomplete training batch")

    group = parser.add_argument_group("Augmentation")
    group.add_argument("--image_resize", type=optional_int, default=None,
                       help="image size fed to the model (default: the model's input size)")
    group.add_argument("--scale", type=float_list, default=[0.08, 1.0], help="random-resized-crop area range")
    group.add_argument("--ratio", type=float_list, default=[0.75, 1.333], help="random-resized-crop aspect range")
    group.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    group.add_argument("--vflip", type=float, default=0.0, help="vertical flip probability")
    group.add_argument("--color_jitter", type=optional_float, default=0.4, help="colour jitter strength")
    group.add_argument("--interpolation", type=optional_str, default=None,
                       choices=[None, "bilinear", "bicubic", "nearest", "area"],
                       help="resize interpolation (default: the model's)")
    group.add_argument("--auto_augment", type=auto_augment_policy, default=None,
                       help="e.g. randaug-m9-mstd0.5-inc1, autoaug, augmix, trivialaugwide")
    group.add_argument("--aug_splits", type=int, default=0, help="augmentation splits (3 with auto_augment)")
    group.add_argument("--re_prob", type=float, default=0.0, help="random erasing probability")
    group.add_argument("--re_scale", type=float_list, default=[0.02, 0.33], help="random erasing area range")
    group.add_argument("--re_ratio", type=float_list, default=[0.3, 3.3], help="random erasing aspect range")
    group.add_argument("--re_value", default=0, help="random erasing fill value")
    group.add_argument("--re_max_attempts", type=int, default=10, help="random erasing attempts")
    group.add_argument("--mean", type=optional_float_list, default=None,
                       help="normalisation mean on the 0-255 scale (default: the model's)")
    group.add_argument("--std", type=optional_float_list, default=None,
                       help="normalisation std on the 0-255 scale (default: the model's)")
    group.add_argument("--crop_pct", type=optional_float, default=None,
                       help="evaluation centre-crop fraction (default: the model's)")
    group.add_argument("--mixup", type=float, default=0.0, help="mixup alpha")
    group.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha")
    group.add_argument("--cutmix_prob", type=float, default=1.0, help="probability of mixing a batch")
    group.add_argument("--aug_repeats", type=int, default=0, help="repeated augmentation (0 off)")

    group = parser.add_argument_group("Model")
    group.add_argument("--model", type=str, default="mobilenet_v2_035_224", help="registered model name")
    group.add_argument("--num_classes", type=optional_int, default=None, help="classes (default: from the data)")
    group.add_argument("--in_channels", type=int, default=3, help="input channels")
    group.add_argument("--drop_rate", type=optional_float, default=None, help="dropout before the head")
    group.add_argument("--drop_path_rate", type=optional_float, default=None, help="stochastic depth")
    group.add_argument("--img_size", type=optional_int, default=None, help="model input resolution")
    group.add_argument("--mlp_layer", type=optional_str, default=None, choices=[None, *registered_layer_names()],
                       help="MLP linear layers of mindcv_ext models (default: the entrypoint's), a registered layer. "
                            "Their settings, named as the layer's constructor names them, go in model_kwargs, e.g. "
                            "ssl '{redn_factor: 4}', lowrank '{rank: 64}', btt '{tt_rank: 2}' (README: the table of "
                            "layers)")
    group.add_argument("--nblocks", type=optional_int, default=None, help="Monarch blocks per factor")
    group.add_argument("--model_kwargs", type=mapping_value, default={},
                       help="other entrypoint arguments as a mapping, e.g. '{patch_size: 4, num_blocks: 4}'")
    for option in family_options():  # the options of one model family, declared in its module
        choices = option.get("choices")
        group.add_argument(f"--{option['name']}", type=FAMILY_OPTION_TYPES[option["type"]], default=None,
                           choices=None if choices is None else [None, *choices], help=option["help"])
    group.add_argument("--pretrained", default=False, **flag, help="load published weights")
    group.add_argument("--ckpt_path", type=str, default="",
                       help="checkpoint to start from (train: weights, and all training state with resume_opt)")
    group.add_argument("--resume_opt", default=False, **flag,
                       help="resume from ckpt_path: optimizer, epoch, LR schedule, EMA and loss scale")
    group.add_argument("--to_monarch", default=False, **flag,
                       help="ckpt_path holds the dense twin's weights: project its dense layers onto this model's "
                            "Monarch layers (mlp_layer: monarch) and start from them, to fine-tune or evaluate")
    group.add_argument("--keep_checkpoint_max", type=int, default=10, help="epoch checkpoints to keep")
    group.add_argument("--ckpt_save_dir", type=str, default="./ckpt", help="where checkpoints and logs go")
    group.add_argument("--ckpt_save_interval", type=int, default=1, help="save every this many epochs")
    group.add_argument("--ckpt_save_policy", type=str, default="latest_k", choices=["latest_k", "top_k"],
                       help="latest_k: the newest keep_checkpoint_max; top_k: the best by validation top-1 "
                            "(needs val_while_train) plus the newest, so a crash can always resume")
    group.add_argument("--epoch_size", type=int, default=90, help="training epochs")
    group.add_argument("--dataset_sink_mode", default=True, **flag, help="sink data to the device (Ascend/GPU)")
    group.add_argument("--ema", default=False, **flag, help="keep (train) or evaluate (eval) EMA weights")
    group.add_argument("--ema_decay", type=float, default=0.9999, help="EMA decay")
    group.add_argument("--clip_grad", default=False, **flag, help="clip gradients by global norm")
    group.add_argument("--clip_value", type=float, default=15.0, help="global-norm bound")
    group.add_argument("--layer_decay", type=optional_float, default=None, help="layer-wise LR decay")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1,
                       help="micro-batches per optimizer update")

    group = parser.add_argument_group("Optimizer")
    group.add_argument("--opt", type=str, default="adam",
                       choices=["sgd", "momentum", "nesterov", "adam", "adamw", "lion", "nadam", "adan", "rmsprop",
                                "adagrad", "lamb"], help="optimizer")
    group.add_argument("--momentum", type=float, default=0.9, help="momentum")
    group.add_argument("--weight_decay", type=float, default=1e-6, help="weight decay")
    group.add_argument("--use_nesterov", default=False, **flag, help="Nesterov momentum")
    group.add_argument("--weight_decay_filter", type=str, default="disable",
                       choices=["disable", "auto", "norm_and_bias"],
                       help="norm_and_bias: no weight decay on norms and biases")
    group.add_argument("--eps", type=float, default=1e-10, help="optimizer epsilon")

    group = parser.add_argument_group("Scheduler")
    group.add_argument("--scheduler", type=str, default="cosine_decay",
                       choices=["constant", "cosine_decay", "exponential_decay", "step_decay", "multi_step_decay",
                                "one_cycle", "cyclic"], help="LR schedule")
    group.add_argument("--lr", type=float, default=0.001, help="peak learning rate")
    group.add_argument("--min_lr", type=float, default=1e-6, help="final learning rate of cosine decay")
    group.add_argument("--warmup_epochs", type=int, default=3, help="linear warm-up epochs")
    group.add_argument("--warmup_factor", type=float, default=0.0, help="warm-up starts at lr * warmup_factor")
    group.add_argument("--decay_epochs", type=int, default=100, help="decay length (cosine: to min_lr)")
    group.add_argument("--decay_rate", type=float, default=0.9, help="step/exponential decay rate")
    group.add_argument("--multi_step_decay_milestones", type=int_list, default=[30, 60, 90],
                       help="epochs of multi-step decay")
    group.add_argument("--lr_epoch_stair", default=False, **flag, help="change the LR once per epoch")
    group.add_argument("--num_cycles", type=int, default=1, help="cosine/cyclic cycles")
    group.add_argument("--cycle_decay", type=float, default=1.0, help="peak decay per cycle")

    group = parser.add_argument_group("Loss")
    group.add_argument("--loss", type=str, default="CE", choices=["CE", "BCE"], help="loss")
    group.add_argument("--label_smoothing", type=float, default=0.0, help="label smoothing")
    group.add_argument("--aux_factor", type=float, default=0.0, help="auxiliary-logit loss factor")
    group.add_argument("--reduction", type=str, default="mean", choices=["mean", "sum"], help="loss reduction")

    group = parser.add_argument_group("AMP")
    group.add_argument("--amp_level", type=str, default="O0", choices=["O0", "O1", "O2", "O3", "auto"],
                       help="mixed precision for training")
    group.add_argument("--val_amp_level", type=str, default="O0", choices=["O0", "O1", "O2", "O3", "auto"],
                       help="mixed precision for evaluation")
    group.add_argument("--amp_cast_list", type=_none_or(lambda v: v if isinstance(v, list) else
                                                        [s.strip() for s in str(v).split(",") if s.strip()]),
                       default=None, help="extra mindspore.nn cell names kept in fp32 under O2, e.g. Softmax")
    group.add_argument("--loss_scale_type", type=str, default="fixed", choices=["fixed", "dynamic", "auto"],
                       help="fixed, dynamic, or auto (dynamic under O2/O3)")
    group.add_argument("--loss_scale", type=float, default=1.0, help="(initial) loss scale")
    group.add_argument("--drop_overflow_update", default=False, **flag,
                       help="skip updates whose gradients overflow (always on with dynamic scaling)")
    group.add_argument("--eval_shuffle", default=False, **flag, help="shuffle the evaluation data")

    group = parser.add_argument_group("Evaluation")
    group.add_argument("--real_labels", type=optional_str, default=None,
                       help="ImageNet ReaL labels (real.json) for eval.py: one list per validation image, in "
                            "sorted file-name order")
    group.add_argument("--exit_thresholds", type=optional_float_list, default=None,
                       help="multi-exit models (DVT), eval.py: confidence threshold per exit, e.g. '0.6 0.7 0' "
                            "(the last exit always answers)")
    group.add_argument("--exit_budget", type=optional_float, default=None,
                       help="multi-exit models, eval.py: find thresholds for this average GMACs per image on "
                            "calibration_split")
    group.add_argument("--calibration_split", type=str, default="train",
                       help="held-out split on which eval.py finds exit thresholds (default: train)")
    group.add_argument("--calibration_samples", type=optional_int, default=50000,
                       help="images of calibration_split used to find exit thresholds (the reference uses 50,000)")
    return parser


def _closest(key: str, options: List[str], prefix: str = "") -> str:
    """"; did you mean '<prefix><option>'?" for the option ``key`` most likely meant, or ""."""
    swapped = [o for o in options if sorted(o) == sorted(key)]  # 'modle' is 'model' with two letters swapped
    tokens = key.split("_")
    # 'lr_rate' -> 'lr': a valid key made of the typo's leading words beats spelling similarity.
    prefixes = [p for p in ("_".join(tokens[:n]) for n in range(len(tokens) - 1, 0, -1)) if p in options]
    close = ([COMMON_NAMES[key]] if COMMON_NAMES.get(key) in options else []) or swapped or prefixes or \
        difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _load_yaml(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        with open(path) as stream:
            data = load_yaml(stream, path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path!r} is not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path!r} cannot be read: {exc.strerror or exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of keys to values")
    return data


def _yaml_defaults(parser: argparse.ArgumentParser, path: str) -> Tuple[Dict[str, Any], List[str]]:
    """The file's values, checked as the command line checks them, and notes on older key names it used."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    values, notes = {}, []
    for key, value in _load_yaml(path).items():
        if key in RENAMED_KEYS and key not in actions:
            current, convert = RENAMED_KEYS[key]
            value = convert(value) if convert and value is not None else value
            notes.append(f"{path}: key '{key}' is an older name; read as {current}: {_short(value)} (write that "
                         f"instead)")
            key = current
        if key not in actions:
            raise ConfigError(f"unknown key '{_clip(key, 100)}' in {path}{_closest(str(key)[:100], list(actions))}")
        action = actions[key]
        if action.type is not None and value is not None:
            try:
                value = action.type(value)
            except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: key '{key}': {exc}") from exc
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(repr(c) for c in action.choices)
            raise ConfigError(f"{path}: key '{key}' is {_short(value)}; choose one of {choices}")
        values[key] = value
    return values, notes


def parse_args(argv: Optional[List[str]] = None, parser: Optional[argparse.ArgumentParser] = None
               ) -> argparse.Namespace:
    """YAML defaults, then the command line. Configuration mistakes exit with a message naming the key."""
    parser = parser or create_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", type=str, default="")
    known, _ = pre.parse_known_args(argv)
    notes = []
    if known.config:
        try:
            values, notes = _yaml_defaults(parser, known.config)
        except ConfigError as exc:
            parser.error(str(exc))
        parser.set_defaults(**values)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        options = [o[2:] for a in parser._actions for o in a.option_strings if o.startswith("--")]
        first = next((u.split("=")[0] for u in unknown if u.startswith("--")), None)
        hint = _closest(first[2:], options, prefix="--") if first else ""
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    args.notes = notes  # for the run's log
    return args


def input_resolution(args: argparse.Namespace) -> Optional[int]:
    """The image size the pipeline produces: the model's ``img_size`` when set, else ``image_resize``.

    A recipe's ``image_resize: 224`` must not feed 224 px images to a model built with ``--img_size 32``.
    """
    if args.img_size and args.image_resize and args.img_size != args.image_resize:
        import logging

        logging.getLogger("mindcv_ext").warning(f"image_resize {args.image_resize} does not match img_size "
                                                f"{args.img_size}; images are made {args.img_size} px for the model")
        return args.img_size
    return args.image_resize or args.img_size


def model_arguments(args: argparse.Namespace) -> Dict[str, Any]:
    """The model family options (``family_options``) that are set, as entrypoint keywords."""
    return {option["name"]: getattr(args, option["name"]) for option in family_options()
            if getattr(args, option["name"], None) is not None}


def model_options(args: argparse.Namespace, **overrides: Any) -> Dict[str, Any]:
    """Every model key of a run's configuration, as ``mindcv_ext.models.create_model``'s keywords; ``overrides``
    (e.g. ``num_classes`` from the data) replace the configuration's."""
    options = dict(num_classes=args.num_classes, in_channels=args.in_channels, pretrained=args.pretrained,
                   drop_rate=getattr(args, "drop_rate", None), drop_path_rate=getattr(args, "drop_path_rate", None),
                   img_size=args.img_size, mlp_layer=args.mlp_layer, nblocks=args.nblocks,
                   model_kwargs=args.model_kwargs, **model_arguments(args))
    options.update(overrides)
    return options


def save_args(args: argparse.Namespace, path: str) -> None:
    """Write the effective configuration as YAML (atomically), re-loadable with ``-c``."""
    # to_monarch is a start-up step (project the dense checkpoint once): kept, it would make eval.py, reading this
    # file beside the run's own Monarch checkpoints, try to project them again.
    data = {k: v for k, v in vars(args).items() if k not in ("config", "notes", "to_monarch", *PLATFORM_ARGUMENTS)}
    text = yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False, default_flow_style=None)
    from mindcv_ext.engine.files import atomic_write

    with atomic_write(path) as stream:
        stream.write(text)
