"""`python launch/pretrain.py ...` in a source checkout: the same program as the installed `factost-pretrain`
(factost_jax/commands/pretrain.py, whose docstring lists the flags)."""

from factost_jax.commands.pretrain import run

if __name__ == "__main__":
    run()
