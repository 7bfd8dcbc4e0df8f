"""Pure PyTorch Mixture-of-Experts building blocks (routers, dispatch, expert banks).

Imports torch only, never fairseq, so that every method can be tested, benchmarked and
reused without a trainer.
"""
