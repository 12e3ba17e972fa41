"""attnbench: is an attention kernel right, and how fast and lean is it?

    from attnbench import reference                      # float64 spec
    from attnbench.implementations import Backend        # backends and the registry
    from attnbench.problem import Problem                # one problem for both suites
    from attnbench.check import check_forward            # the one compare
"""
__version__ = "0.1.0"
