"""Perks, coupons, redemptions, courses and upsell offers for members (to come).

Will react to the payment signals in :mod:`payments.signals` like membership does.
"""
