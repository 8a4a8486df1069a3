"""The `qfsmount` console command. The process runs itself again with its malloc settings
(mallocsettings.py) before the rest of qfs is imported: the configuration's imports alone
are ~0.1 s, which the first run would otherwise pay for nothing."""

from qfsmount.mallocsettings import apply_malloc_settings


def command() -> int:
    apply_malloc_settings()
    from qfsmount.cli import main

    return main()
