"""Helpers shared by several test directories, imported as ``helpers.<module>``.

pyproject.toml's ``[tool.pytest.ini_options] pythonpath`` puts ``tests/`` on ``sys.path``; helpers used by
one directory only (emulators, fakes) live next to their tests instead.
"""
