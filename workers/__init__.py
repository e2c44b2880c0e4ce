"""RQ entry points and the scheduler; thin layers over mta/ and quota/."""

DELIVERY_QUEUE = "sesame-delivery"
