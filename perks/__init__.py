"""Perks: what communities give and sell their members beyond the groups — perks with
eligibility rules and stock, coupons, courses, upsell offers and course announcements.

Depends on ``membership`` (members, tiers) and ``payments``; neither depends on it. Reacts
to ``payments.signals``: a paid order consumes its coupon and activates the enrolment it
bought; money taken back revokes the enrolment (and releases the coupon where the community
says so). Its coupon rule is registered with :mod:`payments.discounts` for every page that
sells.
"""
