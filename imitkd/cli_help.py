"""``--help`` for the console scripts that lists the flags of the chosen task, criterion, model, etc.

fairseq's parser handles ``-h`` in its first pass, before ``parse_args_and_arch`` adds the options of
``--task``, ``--criterion``, ``--arch``, ``--optimizer``, ... so ``--help`` never shows them (not even
``--beta`` or ``--expert``). When ``-h``/``--help`` is given, the console scripts drop it from argv and
swap ``fairseq.options.parse_args_and_arch`` for :func:`print_full_help`: it receives the very parser
fairseq's CLI built, adds what ``parse_args_and_arch`` would add for the chosen components, each in its
own group ("Task (--task speech_to_text_kd)", "criterion (--criterion imit_kd_CE)", ...), prints the
help and exits 0.
"""
import argparse
import sys

from . import checkpoints

HELP_FLAGS = ("-h", "--help")


def install_if_requested() -> None:
    """If argv asks for help, remove the flag and make the CLI's argument parsing print the full help."""
    if not any(a in HELP_FLAGS for a in sys.argv[1:]):
        return
    from fairseq import options

    sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a not in HELP_FLAGS]
    options.parse_args_and_arch = print_full_help


def print_full_help(parser: argparse.ArgumentParser, input_args=None, parse_known=False,
                    suppress_defaults=False, modify_parser=None):
    """Stands in for ``fairseq.options.parse_args_and_arch``: prints the complete help and exits 0."""
    add_component_options(parser, sys.argv[1:] if input_args is None else input_args, modify_parser)
    parser.print_help()
    raise SystemExit(0)


def add_component_options(parser: argparse.ArgumentParser, argv, modify_parser=None) -> None:
    """Add to ``parser`` the options of the components ``argv`` chooses (as ``parse_args_and_arch``
    does), grouped per component, plus the plugin's own ``--trust-checkpoint``."""
    from fairseq.dataclass.utils import gen_parser_from_dataclass
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY
    from fairseq.registry import REGISTRIES
    from fairseq.tasks import TASK_REGISTRY

    if modify_parser is not None:
        modify_parser(parser)
    for action in parser._actions:  # the help needs no data directory
        if not action.option_strings:
            action.required = False
    args, _ = parser.parse_known_args(argv)

    arch = getattr(args, "arch", None)
    if arch is not None and arch != parser.get_default("arch"):  # generate's placeholder default: skip
        model = ARCH_MODEL_REGISTRY.get(arch) or MODEL_REGISTRY.get(arch)
        if model is not None:
            model.add_args(parser.add_argument_group(f"Model-specific configuration (--arch {arch})",
                                                     argument_default=argparse.SUPPRESS))
    if getattr(args, "task", None) in TASK_REGISTRY:
        _grouped(parser, f"Task (--task {args.task})", TASK_REGISTRY[args.task].add_args)
    for registry_name, registry in REGISTRIES.items():
        choice = getattr(args, registry_name, None)
        if choice is None or choice not in registry["registry"]:
            continue
        cls = registry["registry"][choice]
        if hasattr(cls, "add_args"):
            add = cls.add_args
        elif hasattr(cls, "__dataclass"):
            def add(p, cls=cls):
                gen_parser_from_dataclass(p, cls.__dataclass())
        else:
            continue
        _grouped(parser, f"{registry_name} (--{registry_name.replace('_', '-')} {choice})", add)
    if modify_parser is not None:
        modify_parser(parser)

    group = parser.add_argument_group("imitkd")
    group.add_argument(checkpoints.TRUST_FLAG, action="store_true",
                       help="load checkpoints that need more than the safe unpickler's allowlist by full pickle "
                            f"(this can run code in them; logged per file). Same as {checkpoints.TRUST_ENV}=1")


def _grouped(parser: argparse.ArgumentParser, title: str, add) -> None:
    """Call ``add(parser)`` and show the options it added to the parser's default group under ``title``."""
    group = parser.add_argument_group(title)
    before = set(map(id, parser._actions))
    add(parser)
    for action in parser._actions:
        if id(action) in before:
            continue
        for default_group in (parser._optionals, parser._positionals):
            if action in default_group._group_actions:
                default_group._group_actions.remove(action)
                group._group_actions.append(action)
