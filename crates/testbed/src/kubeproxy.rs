//! kube-proxy's rules for the same services, to benchmark against.
