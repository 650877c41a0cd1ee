"""Traffic: spike frames (a scapy layer too), the paced injector, timestamped capture, pcaps, decoding."""
