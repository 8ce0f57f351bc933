"""The runtime side of CNI: what libcni does for containerd or CRI-O."""
