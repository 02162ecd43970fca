"""The command-line programs (the top floor: nothing in the package imports them).

Installed as the `[project.scripts]` `factost-pretrain`, `factost-adapt`, `factost-evaluate` and
`factost-forecast`; in a checkout `python launch/<name>.py` runs the same `run()`.
"""
