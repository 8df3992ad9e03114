"""What payments announce. Receivers run inside the transaction that changed the money, so
whatever they grant or take away is committed with the money or not at all.

``order_paid``: sender the :class:`~payments.models.Order`, ``now=``. Sent once per order,
when its confirmed payments first cover its amount.

``access_withdrawn``: sender the order, ``now=``, ``reason=`` one of ``"refunded"``,
``"disputed"``, ``"dispute_lost"``. The money behind the order was taken back (a full
refund, a partial one the admin asked to end access with, a chargeback): whatever the
order bought must stop. May be sent more than once for an order; receivers are idempotent.

``access_restored``: sender the order, ``now=``. A dispute was decided for us and the money
behind the order is whole again.
"""

from blinker import Namespace

_signals = Namespace()

order_paid = _signals.signal("order-paid")
access_withdrawn = _signals.signal("access-withdrawn")
access_restored = _signals.signal("access-restored")
