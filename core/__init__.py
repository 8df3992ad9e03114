"""Shared plumbing: database base, money, clock, audit log, security. No business rules."""
