"""The `fastguide` subcommands that are not part of another package (sample, convert); each
module has add_arguments(parser) and main(args)."""
