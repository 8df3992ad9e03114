"""Membership: communities, tiers, applications, members and their numbers, groups and
invitations, the H5 join pages and the member's own page.

Reacts to ``payments.signals.order_paid``: a paid application becomes a member.
"""
