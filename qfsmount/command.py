"""The `qfsmount` console command. The process runs itself again with huge pages
(hugepages.py) before the rest of qfs is imported: the configuration's imports alone are
~0.1 s, which the first run would otherwise pay for nothing."""

from qfsmount.hugepages import run_again_with_huge_pages


def command() -> int:
    run_again_with_huge_pages()
    from qfsmount.cli import main

    return main()
