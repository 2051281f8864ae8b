"""The geventchat Locust load tester: ``locust -f loadtest/locustfile.py``.

``latency``, ``failures``, ``settings``, ``target`` and ``report`` import neither Locust nor gevent's monkey-patching;
``tcp_user`` and ``locustfile`` import Locust, which monkey-patches the whole process on import.
"""
