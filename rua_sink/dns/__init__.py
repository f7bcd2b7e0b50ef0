"""DNS: the authorization check, the mail's SPF/DKIM/DMARC, sender identification."""
