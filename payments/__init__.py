"""Payments: orders, payment attempts, provider adapters, the webhook inbox and the ledger.

Imports nothing from the other domain packages. What happened is announced through the
signals in :mod:`payments.signals`; membership, perks and courses react to them.
"""
