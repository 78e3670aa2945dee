//! upshift
