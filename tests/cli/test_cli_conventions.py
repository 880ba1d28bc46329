"""The command line's entry: what the first command a user types costs and shows."""


def test_top_level_help_lists_every_command_without_importing_torch():
    """`cxrbench --help` is the first thing a user types: it lists the commands from their help lines and imports
    no command module (before, it imported every one, and with them torch, sklearn and scipy.stats: 4 CPU s)."""
    import subprocess
    import sys

    from cxrbench.cli import COMMANDS

    code = ("import sys\nfrom cxrbench.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in sys.modules if m in ('torch', 'sklearn', 'scipy.stats') "
            "or m.startswith('cxrbench.commands.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("LOADED []"), out[-300:]
    for name, line in COMMANDS.items():
        assert name in out and line.split()[0] in out
