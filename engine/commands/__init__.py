"""The command line: ``python -m engine NAME`` runs ``engine.commands.NAME.main(argv)``.

One module per command, each holding just its ``build_parser()`` and ``main(argv) -> int``:
options in, a call to the engine module that does the work, the result printed. Tests and
scripts can call ``main([...])`` directly. ``engine/cli.py`` lists the commands.
"""
