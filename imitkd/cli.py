"""Console scripts: fairseq's own CLIs with the plugin preloaded (no --user-dir needed).

Passing ``--user-dir <repo>/imitkd`` as well is harmless: fairseq sees the package already imported.
train/generate/validate also take ``--trust-checkpoint`` (see ``imitkd.checkpoints``; removed from argv
before fairseq parses it), and their ``-h``/``--help`` lists the flags of the chosen task, criterion and
the other chosen components (``imitkd.cli_help``), which fairseq's own help never shows.
"""
import sys

import imitkd  # noqa: F401  (registers the plugin and applies the compat fixes)

from . import checkpoints, cli_help
from .errors import ImitKDError, path_error


def _run(main, loads_checkpoints=False):
    try:
        if loads_checkpoints:
            sys.argv = checkpoints.strip_trust_flag(sys.argv)
            cli_help.install_if_requested()
        main()
    except ImitKDError as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2)
    except OSError as e:  # a path fairseq cannot read or create (--save-dir under a file, no permission): one line
        sys.stderr.write(f"error: {path_error(e)}\n")
        raise SystemExit(2)


def train():
    from fairseq_cli.train import cli_main
    _run(cli_main, loads_checkpoints=True)


def generate():
    from fairseq_cli.generate import cli_main
    _run(cli_main, loads_checkpoints=True)


def validate():
    from fairseq_cli.validate import cli_main
    _run(cli_main, loads_checkpoints=True)


def preprocess():
    from fairseq_cli.preprocess import cli_main
    _run(cli_main)


def average_checkpoints():
    from .averaging import main
    raise SystemExit(main())
