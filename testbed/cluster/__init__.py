"""A fabric spread over several hosts: the hosts (real, or emulated on this machine), and the
Mininet cluster-edition backend that builds each placed part of a plan on its host."""
