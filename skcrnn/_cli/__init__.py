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


def main(argv=None):
    """Parse ``argv`` (default: the process's arguments) and run the command."""
    args = build_parser().parse_args(argv)
    if args.command == "fit":
        fit.run(args)
    else:
        reproduce.check_args(args)
        reproduce.run(args)
    return 0
