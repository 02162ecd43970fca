"""`python launch/adapt.py ...` in a source checkout: the same program as the installed `factost-adapt`
(factost_jax/commands/adapt.py, whose docstring lists the flags)."""

from factost_jax.commands.adapt import run

if __name__ == "__main__":
    run()
