"""The engine that drives compiled policies: backtests now, live trading next."""
