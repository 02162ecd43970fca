"""`python launch/forecast.py ...` in a source checkout: the same program as the installed `factost-forecast`
(factost_jax/commands/forecast.py, whose docstring lists the flags)."""

from factost_jax.commands.forecast import run

if __name__ == "__main__":
    run()
