"""edgebridge.runtime"""
