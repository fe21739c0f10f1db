// The images whose original file name has this HMAC (stored only with keep_original_name_keys).
// Parameters: $name_key.
MATCH (i:Image {name_key: $name_key})
RETURN i.key AS key
ORDER BY key
