"""necks"""
