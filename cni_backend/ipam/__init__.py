"""Address management shared by the CNI IPAM plug-in and Docker's IpamDriver."""
