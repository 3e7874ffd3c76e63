"""The command line, ``python -m skcrnn COMMAND`` (also the ``skcrnn`` script).

One module per command, each registering its subcommand (``add_parser``)
and running it (``run``):

- :mod:`.reproduce`: the paper's comparison of models on one data set
  (tables and plots from :mod:`.report`);
- :mod:`.fit`: fit a recommender on an event file and save it, also across
  processes under ``torchrun``.
"""

import argparse

from . import fit, reproduce


def build_parser():
    """The ``skcrnn`` parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="skcrnn")
    commands = parser.add_subparsers(dest="command", required=True)
    reproduce.add_parser(commands)
    fit.add_parser(commands)
    return parser


#: What a user's mistake raises (a bad path, parameter or file): reported in
#: one line, without a traceback.
USER_ERRORS = (ValueError, TypeError, OSError)


def main(argv=None):
    """Parse ``argv`` (default: the process's arguments) and run the command.

    A user's mistake (:data:`USER_ERRORS`) prints one line naming the
    problem, ``skcrnn COMMAND: error: ...``, and exits with status 2, as the
    parser does for bad arguments.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "fit":
            fit.run(args)
        else:
            reproduce.check_args(args)
            reproduce.run(args)
    except USER_ERRORS as error:
        parser.exit(2, f"skcrnn {args.command}: error: {_one_line(error)}\n")
    return 0


def _one_line(error):
    """The message of ``error`` on one line (an OSError with its path)."""
    message = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename is not None \
            and str(error.filename) not in message:
        message = f"{error.filename}: {message}"
    return " ".join(message.split())
