"""Access control: hashed API keys with read/write scopes, and the Flask guard that checks them."""
