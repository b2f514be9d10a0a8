"""The auctioneer: items from a folder, secure join, signed announcements over multicast."""
