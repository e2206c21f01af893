"""edgebridge.train"""
