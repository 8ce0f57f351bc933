"""The CNI side: plug-ins, IPAM store, Linux networking and the runtime-side caller.

Nothing in this package knows about Docker; any CNI runtime can use it.
"""
