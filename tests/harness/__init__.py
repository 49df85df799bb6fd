"""What the test suites share: waiting on a condition (``wait``), the daemon subprocess
(``daemon``), one loopback HTTP request (``http``) and client threads under load (``load``)."""
