"""Names shared by the data and model layers: example columns and special rows.

The histories stage writes these columns and the towers read them; keeping
the names in one dependency-free module lets both sides agree without the
data layer importing TensorFlow or the model layer importing Ray.
"""

# Embedding row for padding and for movies outside the vocabulary. It is all
# zeros and masked out wherever a history is read.
PAD_ID = 0

USER_ID = "user_id"
POSITION = "position"
HISTORY_IDS = "history_ids"
HISTORY_RATINGS = "history_ratings"
TARGET_ID = "target_id"
EXAMPLE_COLUMNS = (USER_ID, POSITION, HISTORY_IDS, HISTORY_RATINGS, TARGET_ID)
