"""Linux networking: namespaces, netlink (the only pyroute2 user) and firewall rules."""
