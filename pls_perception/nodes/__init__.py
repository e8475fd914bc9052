"""Thin ROS 2 nodes: they translate between ROS messages/parameters and the ROS-free core."""
