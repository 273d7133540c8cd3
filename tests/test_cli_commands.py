"""The commands of jupyter-gpu-meter: declared by the service, each help its command's own."""

import json
import subprocess
import sys

from traitlets.config import Application
from traitlets.utils.importstring import import_item

from jupyter_gpu_meter.service.app import MeterService
from tests.test_cli import cli

COMMANDS = ["report", "upgrade-db", "budget", "homes", "snapshots", "agent"]


def test_the_service_alone_declares_its_commands_without_importing_them():
    code = (
        "import json, sys\n"
        "from jupyter_gpu_meter.service.app import MeterService\n"
        "print(json.dumps({\n"
        "    'commands': {name: cls for name, (cls, _) in MeterService.subcommands.items()},\n"
        "    'imported': sorted(m for m in sys.modules if m.startswith('jupyter_gpu_meter.cli')),\n"
        "}))\n"
    )
    found = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert found == {
        "commands": {
            "report": "jupyter_gpu_meter.cli.report.ReportCommand",
            "upgrade-db": "jupyter_gpu_meter.cli.db.UpgradeDBCommand",
            "budget": "jupyter_gpu_meter.cli.budget.BudgetCommand",
            "homes": "jupyter_gpu_meter.cli.homes.HomesCommand",
            "snapshots": "jupyter_gpu_meter.cli.homes.SnapshotsCommand",
            "agent": "jupyter_gpu_meter.service.agent.MeterAgent",
        },
        "imported": [],
    }


def declared(app: type[Application], path=()):
    """(command path, class, help) of every command under ``app``, groups' commands too."""
    subcommands = app.subcommands if isinstance(app.subcommands, dict) else {}  # else a trait
    for name, (target, help) in subcommands.items():
        cls = import_item(target) if isinstance(target, str) else target
        yield (*path, name), cls, help
        yield from declared(cls, (*path, name))


def test_every_command_is_a_command_and_its_help_is_its_docstring():
    commands = list(declared(MeterService))
    assert [" ".join(path) for path, _, _ in commands] == [
        "report",
        "upgrade-db",
        "budget",
        "budget set",
        "budget grant",
        "budget remove",
        "budget show",
        "budget history",
        "homes",
        "homes list",
        "homes remove",
        "snapshots",
        "snapshots list",
        "snapshots take",
        "snapshots restore",
        "snapshots delete",
        "agent",
    ]
    for path, cls, help in commands:
        assert issubclass(cls, Application), path
        assert cls.name == " ".join(("jupyter-gpu-meter", *path))
        assert help.split() == cls.__doc__.split(), path


def test_help_lists_the_commands_as_before():
    # the subcommand section of `jupyter-gpu-meter --help` as cli.py printed it when it patched
    # them in (only the report's second line no longer indented more than its first)
    expected = """
report
    Per user: sessions, GPU-hours and charges, and storage (GB-hours and charges),
    from the ledger. ``charges`` is GPU and CPU time; ``storage_charges`` comes on top.
    Then busy and idle GPU-hours, and energy (kWh; ``energy_charges`` on top).
upgrade-db
    Create the ledger's tables, or migrate them to this version (alembic).
budget
    Budgets per user or group: set, grant, remove, show, history.
homes
    Users' home volumes: list, remove.
snapshots
    Snapshots of users' homes: list, take, restore, delete.
agent
    The meter of one GPU server in a cluster: its Docker events, GPUs and
    heartbeats into the shared ledger, tagged with the node.

Options
"""
    assert expected in cli("--help").stdout
    budget = cli("budget", "--help").stdout
    assert "set\n    Set the budget of a user, or of each member of a group.\n" in budget
    assert "history\n    Every change to budgets: who, when, what, how much.\n" in budget
    assert "--MeterService.db_url=<Unicode>" in cli("--help-all").stdout


def test_an_unknown_or_missing_command_of_a_group_says_which_there_are():
    unknown = cli("homes", "frobnicate", check=False)
    assert unknown.returncode == 2
    assert "'frobnicate' is not a command here: use list, remove" in unknown.stderr
    missing = cli("snapshots", check=False)
    assert missing.returncode == 2
    assert "give a command: list, take, restore, delete" in missing.stderr
