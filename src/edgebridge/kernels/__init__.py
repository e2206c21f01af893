"""edgebridge.kernels"""
