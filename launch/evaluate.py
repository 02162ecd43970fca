"""`python launch/evaluate.py ...` in a source checkout: the same program as the installed `factost-evaluate`
(factost_jax/commands/evaluate.py, whose docstring lists the flags)."""

from factost_jax.commands.evaluate import run

if __name__ == "__main__":
    run()
