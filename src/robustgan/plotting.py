"""matplotlib, imported on first use: it costs about a second of start-up, which commands
that draw nothing should not pay; the Agg backend draws to files on machines without a
screen."""


def pyplot():
    import matplotlib  # imported here on purpose (start-up time), see the module docstring

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
