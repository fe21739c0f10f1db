// Removes the community of images (so that they are assigned again). Parameters: $keys.
UNWIND $keys AS key
MATCH (i:Image {key: key})
REMOVE i.community;
